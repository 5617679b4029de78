import sys

from fedjax_room.cli import main

sys.exit(main())
