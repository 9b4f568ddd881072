"""The feedback loop: remembering recent predictions, judging true labels, keeping anonymised errors."""
