"""The recipe's pure rules: queries, cleaning, rows, pairing, provenance, reasons and the released schema."""
