"""Helpers first written for test_heldout.py that other test modules use too: IT, EN."""

IT = ["Il gatto dorme sul divano mentre la pioggia cade sulla città di Roma.",
      "Domani andremo al mare con gli amici di Napoli, se il tempo lo permette."]
EN = ["The quick brown fox jumps over the lazy dog near the river bank.",
      "Language models predict the next token from the tokens before it."]
