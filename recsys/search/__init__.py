"""Product search over a bundle's catalogue: lexical (BM25 over character n-grams) and semantic
(a sentence encoder + FAISS) lists fused by reciprocal rank, re-ranked by the user's tower output.

Flow: `text` turns catalogue rows and queries into what both channels read; `lexical` and
`encoder` are the two channels; `engine` fuses them (the one path the server and the benchmark
call); `queries` and `quality` build and score the benchmark. Building encoders (torch) lives in
``compression.text_encoder``; this package stays torch-free, like ``recsys.pipeline``.
"""
