# cmake -DIN=file -DOUT=header -DNAME=symbol -P embed_text.cmake
# Embeds a text file as a C string so programs carry their templates with them.
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* generated from ${IN}; do not edit */\n"
  "static const char ${NAME}[] = {${bytes} 0x00};\n")
