"""Verification: slow references, symbolic proofs, numeric equivariance, sensitivity and completeness checks."""
