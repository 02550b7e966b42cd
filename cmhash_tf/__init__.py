"""Triplet deep cross-modal hashing (IAPR TC-12); spec ../shared/specs/cmhash.md. Port pending (its own issue)."""
