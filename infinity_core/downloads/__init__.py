"""The official model files and fetching them: the file table (`official`), the Hugging Face client (`hub`),
verified resumable downloads (`fetch`), what is already on disk (`records`) and the T5 encoder half written from
a full flan-t5-xl checkpoint (`t5_encoder_file`). Network code lives here only, and runs only when asked."""
