"""dnssd_wa: see DESIGN.md §2 (work in progress)."""
