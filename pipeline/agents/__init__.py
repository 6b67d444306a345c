"""Thin Faust agents: decode → update → emit. The work lives in the modules they call."""
