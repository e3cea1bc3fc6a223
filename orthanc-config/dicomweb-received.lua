-- The DICOMweb stand-in's own record of every instance it is sent (STOW-RS included), stored
-- or not: one log line each, "pixl-received <SOPInstanceUID>" (the pseudonymised UID PIXL sent;
-- this server plays the research platform, outside the hospital). Tests count these lines to
-- prove an instance was sent exactly once: Orthanc itself keeps one copy of an instance sent
-- twice, so its index alone cannot tell.
function ReceivedInstanceFilter(dicom, origin, info)
  print('pixl-received ' .. tostring(dicom.SOPInstanceUID))
  return true
end
