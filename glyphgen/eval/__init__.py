"""OCR-in-the-loop evaluation (DESIGN 5): metrics, held-out prompt sets and the evaluator."""
