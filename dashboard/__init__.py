"""The DIT Streamlit dashboard. Start it with ``streamlit run dashboard/app.py`` from the repo root."""
