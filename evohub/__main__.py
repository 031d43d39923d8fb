import sys

from evohub.cli import main

sys.exit(main())
