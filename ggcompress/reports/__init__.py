"""Reports for people and CI: tables, plots, threshold gates, report diffs, JSON cleaning."""
