"""Monthly cost reports per department: extract from the ledger, validate with Great Expectations,
aggregate with pandas, render with Jinja2 (+ a matplotlib chart), archive, and deliver by mail."""

from llmops.reports.monthly import MonthlyReport, build_monthly_report, deliver_monthly_report, month_bounds

__all__ = ["MonthlyReport", "build_monthly_report", "deliver_monthly_report", "month_bounds"]
