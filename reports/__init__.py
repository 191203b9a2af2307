"""Reports: the checker that turns run histories into metrics, plus plots and the HTML report."""
