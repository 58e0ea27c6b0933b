"""FlashInfer-Trace (flashinfer-bench's data model) out of attnbench's rows, and back in as a sweep.

``model``: how a row maps to a Definition, a Workload and a Trace; ``reference``: the float64
``run()`` each Definition carries; ``export``: ``attnbench export --format flashinfer-trace``;
``load``: ``attnbench import-trace``, a definitions + workloads folder as a sweep, and the
Definition's reference as one more correctness oracle. docs/interop.md says what maps to what.
"""
