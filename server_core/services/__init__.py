"""Operations on the control plane, shared by the operator API and the desktop UI."""
