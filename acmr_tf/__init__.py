"""ACMR (ACM MM 2017); spec ../shared/specs/acmr.md. Port pending (its own issue)."""
