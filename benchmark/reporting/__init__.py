"""Reporting: what turns rows into tables and plots a researcher reads (``report``), privacy numbers
with their intervals and the paper's DAGER table (``privacy``), the paper's cost comparison (``paper``),
bootstrap statistics, what defenses declare for any row (``facts``), which rows went stale (``staleness``)
and the parameter descriptions ``shebench show`` prints (``describe``). Nothing here changes a row.
"""
