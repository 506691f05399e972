"""lowrank-studio dashboard (home page)."""

import streamlit as st

import lowrank

st.set_page_config(page_title="lowrank-studio", layout="wide")
st.title("lowrank-studio")
st.write("Weighted low-rank compression of Transformer language models.")


@st.cache_resource(show_spinner="Loading model...")
def model(name: str):
    return lowrank.load_model(name)


@st.cache_data(show_spinner="Computing spectra...")
def layer_table(name: str):
    return lowrank.spectra(model(name)).drop(columns=["singular_values", "energy"])


name = st.selectbox("Model", list(lowrank.PACKAGED), index=0)
try:
    st.dataframe(layer_table(name), hide_index=True)
except lowrank.ModelLoadError as err:
    st.error(str(err))
