"""Evaluation beyond EVALITA: lm-evaluation-harness on models loaded the llamantino way
(`harness`, `llamantino eval lm-eval`), and side-by-side reports of several runs
(`compare`, `llamantino report compare`).

Bits per byte (`llamantino.bpb`) and the EVALITA 2023 tasks (`llamantino.evalita`) keep
their own modules; these read their outputs.
"""
