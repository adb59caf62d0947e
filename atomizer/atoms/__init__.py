"""Atoms: images -> model inputs. Tokens (:class:`~atomizer.atoms.tokens.AtomBatch`), their encodings,
and the baselines' canvas (:class:`~atomizer.atoms.canvas.CanvasBatch`)."""
