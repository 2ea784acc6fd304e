"""The report: sections, tables, figures, the sentences computed from the numbers (readings/), the HTML."""
