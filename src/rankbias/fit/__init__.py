"""Trainers: how each model family is fitted (the models themselves live in ``models/``)."""
