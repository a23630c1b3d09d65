"""The seed articles' `python3 examples/llama/run.py ...` command line: same as `trtllm-run`."""

import sys

from inflight_batcher.run import main

sys.exit(main())
