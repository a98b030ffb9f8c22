"""The evaluation layer: batched scoring, rank classification and generation, evaluation of
tasks and suites, benchmark tasks, JSONL inference and the HTML report."""
