"""ZSCRGAN (Roy et al., CIKM 2020): zero-shot text -> image retrieval; spec ../shared/specs/zscrgan.md."""
