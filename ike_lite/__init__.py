"""ike_lite: see DESIGN.md §2 (work in progress)."""
