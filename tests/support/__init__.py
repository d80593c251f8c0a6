"""Helpers the tests share that are bigger than a fixture: corpus builders."""
