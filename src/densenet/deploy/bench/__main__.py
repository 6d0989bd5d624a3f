"""The child process of ``densenet bench``: ``python -m densenet.deploy.bench '<JSON spec>'`` times one configuration
or measures its peak memory and prints the result as one JSON line (:func:`~densenet.deploy.bench.timing.child_main`).
"""

import sys

from densenet.deploy.bench.timing import child_main

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
