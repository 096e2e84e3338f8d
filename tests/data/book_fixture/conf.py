# A one-page Sphinx site with the faults the browser test must catch (tests/test_book_browser.py):
# the book's own theme, MyST and the bundled MathJax, as in _config.yml.
project = "browser-test fixture"
extensions = ["myst_parser", "sphinx-mathjax-offline"]
myst_enable_extensions = ["amsmath", "dollarmath", "colon_fence"]
html_theme = "sphinx_book_theme"
exclude_patterns = ["_build"]
