"""attnbench's command line from a checkout: the same as the ``attnbench`` command (``attnbench.harness.app.main``).

    python run.py                                   # a small comparison on the best device present
    python run.py variant=mla seq=32k               # MLA at a 32k context, every implementation
    python run.py -m variant=mha,mqa,gqa,mla seq=1k,4k,32k batch=1,8 impl=eager,sdpa,absorbed
    python run.py -m experiment=context_scaling    # a paper-style study (conf/experiment/)
    python run.py status results/<name>             # the other commands: report, merge, status, nightly, lowrank

See docs/cli.md for every key; results land under results/<name>/.
"""

import sys

try:
    from attnbench.harness.app.main import main
except ModuleNotFoundError as missing:
    # The folders import as attnbench.* only once installed (editable: the checkout's own files).
    if missing.name != "attnbench":
        raise
    sys.exit("error: attnbench is not installed in this Python; from the checkout: pip install torch==2.13.0 -e .")

if __name__ == "__main__":
    sys.exit(main())
