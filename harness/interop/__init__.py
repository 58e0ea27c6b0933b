"""Exchange with the field's other tools: attnbench's cases and rows in their formats, and back."""
