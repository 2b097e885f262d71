"""Reserved for the anonymise issue; see DESIGN.md."""
