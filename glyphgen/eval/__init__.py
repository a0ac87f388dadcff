"""OCR-in-the-loop evaluation: metrics, held-out prompt sets and the evaluator."""
