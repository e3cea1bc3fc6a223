-- The user "operator" of orthanc-raw and orthanc-anon may look but not change anything: GET
-- everywhere (Orthanc Explorer, /pixl/ui/, /pixl/status, downloads), and POST only to the two
-- searches Orthanc Explorer makes. Every other user keeps full rights.
--
-- Why a Lua filter: Orthanc 1.10.1 (Debian 12) gives every user of "RegisteredUsers" full
-- rights, and Debian packages no authorization plugin. Orthanc runs this function before every
-- REST request and answers 403 when it returns false (checked: GET 200, POST /tools/find 200,
-- DELETE and other POSTs 403).
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if username ~= 'operator' then
    return true
  end
  if method == 'GET' then
    return true
  end
  return method == 'POST' and (uri == '/tools/find' or uri == '/tools/lookup')
end
