"""The seed articles' `python3 examples/llama/run.py ...` command line: same as `trtllm-run`."""

import sys

from tensorrt_llm.commands.run import main

sys.exit(main())
