"""ZSCRGAN (CIKM 2020); spec ../shared/specs/zscrgan.md. Port pending (its own issue)."""
