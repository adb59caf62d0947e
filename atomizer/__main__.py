import sys

from atomizer.cli import main

sys.exit(main())
