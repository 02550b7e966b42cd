"""JFSE (TPAMI) and CFSA (SIGIR 2020); spec ../shared/specs/jfse.md. Port pending (its own issue)."""
