"""Evaluation: the query/gallery protocol, ReID metrics, re-ranking, complexity counts and pictures."""
