"""Tables and plots built from the registry alone: no retraining, no re-evaluation."""
from .tables import (
    FILES,
    FORMATS,
    ReportError,
    add_references,
    collect,
    flag_lines,
    records,
    render,
    rich_table,
    table_text,
    terminal,
    write_report,
)


def write_plots(df, out_dir):
    """PNG figures for a `collect(..., with_paths=True)` frame (matplotlib is imported only here)."""
    from .plots import write_plots as _write

    return _write(df, out_dir)


__all__ = ["FILES", "FORMATS", "ReportError", "add_references", "collect", "flag_lines", "records", "render",
           "rich_table", "table_text", "terminal", "write_plots", "write_report"]
