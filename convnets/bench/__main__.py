import sys

from convnets.bench import main

sys.exit(main())
