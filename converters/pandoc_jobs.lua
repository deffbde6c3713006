-- The resident pandoc of one worker (converters/pandoc_resident.py runs it as
-- `pandoc +RTS -M<heap> -RTS lua -E pandoc_jobs.lua`): jobs one after the
-- other on stdin, answers on stdout, until stdin closes.
--
-- Every message is one JSON line, optionally followed by raw bytes whose count
-- the line gives ("size"). A job:
--
--   -> {"op": "docx", "reader": "markdown"|"html", "size": N[, "reference_doc": P]} + text
--   <- {"images": [src, ...]}                     every distinct image source, in order
--   -> {"media": [{"ok": true, "size": N, "mime": M, "ext": E} | {"ok": false}, ...]} + bytes
--      (these two only when the document has images)
--   <- {"ok": true, "size": N} + the .docx         or {"ok": false, "error": "..."}
--
--   -> {"op": "html", "size": N, "fallback_title": T} + markdown
--   <- {"ok": true, "size": N} + standalone HTML5  or {"ok": false, "error": "..."}
--
-- The reader runs sandboxed (no file may be read on behalf of the document).
-- The docx writer is not sandboxed: it reads any image path still in the
-- document. So before writing, every image is either pointed at the bytes the
-- daemon vetted (inserted into the media bag) or replaced by its description.

local json = pandoc.json
local stdin, stdout = io.stdin, io.stdout
local NO_FILES = {} -- pandoc.read's sandbox: the reader may open none

local function send(header, payload)
  stdout:write(json.encode(header), "\n")
  if payload ~= nil then
    stdout:write(payload)
  end
  stdout:flush()
end

local function receive()
  local line = stdin:read("l")
  if line == nil then
    return nil
  end
  return json.decode(line, false)
end

local function read_bytes(count)
  if count == 0 then
    return ""
  end
  local data = stdin:read(count)
  if data == nil or #data ~= count then
    error("the daemon closed the pipe mid-message")
  end
  return data
end

local function image_sources(doc)
  local sources, seen = {}, {}
  doc:walk({
    Image = function(img)
      if not seen[img.src] then
        seen[img.src] = true
        sources[#sources + 1] = img.src
      end
    end,
  })
  return sources
end

local function vetted_media(sources)
  if #sources == 0 then
    return {} -- nothing to ask: one round trip fewer
  end
  send({ images = sources })
  local answer = receive()
  if answer == nil then
    error("the daemon closed the pipe mid-job")
  end
  return answer.media
end

local function docx_job(job, text)
  local doc = pandoc.read(text, job.reader, {}, NO_FILES)
  local sources = image_sources(doc)
  local media = vetted_media(sources)
  local bodies = {}
  for index, item in ipairs(media) do
    if item.ok then
      bodies[index] = read_bytes(item.size)
    end
  end
  pandoc.mediabag.empty()
  local vetted = {}
  for index, item in ipairs(media) do
    if item.ok then
      local key = "sir-media/" .. index .. item.ext
      pandoc.mediabag.insert(key, item.mime, bodies[index])
      vetted[sources[index]] = key
    end
  end
  -- Meta (a title with a picture) is walked too.
  doc = doc:walk({
    Image = function(img)
      local key = vetted[img.src]
      if key == nil then
        return pandoc.Span(img.caption)
      end
      img.src = key
      return img
    end,
  })
  local options = {}
  if job.reference_doc ~= nil then
    options.reference_doc = job.reference_doc
  end
  local out = pandoc.write(doc, "docx", options)
  pandoc.mediabag.empty()
  return out
end

-- The PDF title: front-matter title, else pagetitle, else the first heading,
-- else the fallback (the file name stem). pagetitle, not title, so the heading
-- is not repeated as a title block.
local function set_page_title(doc, fallback)
  if doc.meta.title ~= nil or doc.meta.pagetitle ~= nil then
    return
  end
  local found = nil
  for _, block in ipairs(doc.blocks) do
    if block.t == "Header" then
      found = pandoc.utils.stringify(block.content)
      break
    end
  end
  if found == nil or found == "" then
    found = fallback
  end
  doc.meta.pagetitle = found
end

local html_template = nil

local function html_job(job, text)
  local doc = pandoc.read(text, "markdown", {}, NO_FILES)
  set_page_title(doc, job.fallback_title)
  doc.meta["document-css"] = false
  if html_template == nil then
    html_template = pandoc.template.compile(pandoc.template.default("html5"))
  end
  return pandoc.write(doc, "html5", { template = html_template })
end

local jobs = { docx = docx_job, html = html_job }

while true do
  local job = receive()
  if job == nil then
    break
  end
  local text = read_bytes(job.size)
  local run = jobs[job.op]
  local ok, result = pcall(function()
    if run == nil then
      error("unknown op " .. tostring(job.op))
    end
    return run(job, text)
  end)
  pandoc.mediabag.empty()
  if ok then
    send({ ok = true, size = #result }, result)
  else
    send({ ok = false, error = tostring(result):sub(1, 2000) })
  end
end
