"""`python -m recsys.train`: towers, ranker, and the model directory they are saved in."""
