import sys

from emjax.cli import main

sys.exit(main())
