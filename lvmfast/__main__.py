import sys

from lvmfast.cli import main

sys.exit(main())
