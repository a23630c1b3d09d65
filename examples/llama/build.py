"""The seed articles' `python3 examples/llama/build.py ...` command line: same as `trtllm-build`."""

import sys

from tensorrt_llm.commands.build import main

sys.exit(main())
