import sys

from smsstream.cli import main

sys.exit(main())
