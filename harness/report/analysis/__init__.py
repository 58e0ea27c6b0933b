"""What a report works out from the rows before it shows them: the baseline each case is compared
with (``baseline``), the cost model's lines (``costmodel``), how many sequences fit a memory budget
(``capacity``) and the throughput a budget allows (``budget``)."""
