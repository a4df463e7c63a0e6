"""esp_udp: see DESIGN.md §2 (work in progress)."""
